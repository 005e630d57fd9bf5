"""The issue's performance targets, checked against bench results, as Markdown.

    python3 bench/targets.py bench/results/report.json [bench/results/report_bf16.json] \
        [bench/results/train_step.json] >> bench/REPORT.md

Targets (issues "nanoplus bench" and "Faster where it counts"):
- end-to-end overhead, (pre-processing + decode/NMS) / model-only p50, at most 5% (stretch 3%, and
  3% on every backend) for NanoDet-Plus-m-416 at 1 thread;
- the fastest backend at least 2.5x faster than PyTorch eager, same model, threads and precision;
- a training step (``bench/train_throughput.py --upstream ... --json``, the list of rows it writes)
  at least 1.3x upstream NanoDet's own, per thread count.
Every number printed is read from the JSON files; nothing here is typed in by hand.
"""
from __future__ import annotations

import json
import sys

OVERHEAD_TARGET, OVERHEAD_STRETCH, SPEEDUP_TARGET, TRAIN_STEP_TARGET = 0.05, 0.03, 2.5, 1.3
MODEL = "nanodet-plus-m_416"


def p50(result: dict, stage: str) -> float:
    return result["stages"][stage]["p50_ms"]


def rows(doc: dict, threads: int, precision: str) -> list[dict]:
    return [r for r in doc["results"]
            if r["model"]["name"] == MODEL and r.get("threads") == threads and r.get("precision") == precision]


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def speedup_lines(doc: dict, precision: str) -> list[str]:
    lines = []
    for threads in sorted({r.get("threads") for r in doc["results"] if r.get("threads")}):
        candidates = rows(doc, threads, precision)
        torch = [r for r in candidates if r["backend"] == "torch"]
        engines = [r for r in candidates if r["backend"] != "torch"]
        if not torch or not engines:
            continue
        fastest = min(engines, key=lambda r: p50(r, "model"))
        ratio = p50(torch[0], "model") / p50(fastest, "model")
        e2e = p50(torch[0], "end_to_end") / p50(fastest, "end_to_end")
        lines.append(f"| {precision} | {threads} | {fastest['backend']} {p50(fastest, 'model'):.2f} ms | "
                     f"{p50(torch[0], 'model'):.2f} ms | {ratio:.2f}x | {e2e:.2f}x | {verdict(ratio >= SPEEDUP_TARGET)} |")
    return lines


def train_step_lines(rows: list[dict]) -> list[str]:
    """The training-step target from ``bench/train_throughput.py --upstream DIR --json``'s rows."""
    steps = [r for r in rows if "layout" in r]
    upstream = {r["threads"]: r for r in steps if r["layout"] == "upstream"}
    if not upstream:
        return []
    layouts = [layout for layout in dict.fromkeys(r["layout"] for r in steps) if layout != "upstream"]
    first = steps[0]
    out = [f"**Training step** ({first['config']} with the aux branch, batch {first['batch']}, "
           f"{first['imgsz']}x{first['imgsz']}; forward_train, backward, clip, AdamW, EMA; median of "
           f"{first['steps']} steps interleaved in one process with upstream NanoDet's own step, same "
           "weights and batch; `winograd` is `nanoplus train`'s):", "",
           "| threads | upstream | " + " | ".join(f"ours, {layout}" for layout in layouts)
           + " | nanoplus train / upstream | target 1.3x |",
           "|---:|---:|" + "---:|" * len(layouts) + "---:|---|"]
    for threads, theirs in sorted(upstream.items()):
        ours = {r["layout"]: r for r in steps if r["threads"] == threads and r["layout"] != "upstream"}
        trained = ours.get("winograd") or ours.get(layouts[-1])
        cells = " | ".join(f"{ours[layout]['median_step_s']:.2f} s" if layout in ours else "-" for layout in layouts)
        out.append(f"| {threads} | {theirs['median_step_s']:.2f} s ({theirs['images_per_s']:.2f} images/s) | {cells} | "
                   f"**{trained['vs_upstream']:.2f}x** | {verdict(trained['vs_upstream'] >= TRAIN_STEP_TARGET)} |")
    losses = ", ".join(f"{r['layout']} {r['first_step']['loss']:.6f}"
                       for r in steps if r["threads"] == first["threads"])
    out += ["", f"First-step loss (the same arithmetic is timed): {losses}."]
    pipeline = [r["data_pipeline"] for r in rows if "data_pipeline" in r]
    if pipeline:
        p = pipeline[0]
        out.append(f"The data pipeline (augmentation + collate, 1 thread) delivers {p['images_per_s_per_worker']:.1f} "
                   f"images/s on {p['data']} ({p['images']} images), against the step's "
                   f"{max(r['images_per_s'] for r in steps if r['layout'] != 'upstream'):.2f}.")
    return out + [""]


def main(paths: list[str]) -> int:
    docs, train_rows = [], []
    for path in paths:
        try:
            doc = json.load(open(path, encoding="utf-8"))
        except (OSError, ValueError) as e:
            sys.exit(f"targets: {path}: cannot read it as JSON ({e})")
        if isinstance(doc, list) and all(isinstance(r, dict) for r in doc):
            train_rows += doc  # bench/train_throughput.py --json
            continue
        if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
            sys.exit(f"targets: {path}: not a results document of nanoplus bench --json (no 'results' list) "
                     "nor the rows of bench/train_throughput.py --json")
        docs.append(doc)
    if not docs:
        sys.exit("targets: give at least one results document of nanoplus bench --json")
    main_doc = docs[0]
    out = ["", "## The targets", ""]

    one_thread = [r for r in rows(main_doc, 1, "fp32") if r["backend"] != "torch"]
    if one_thread:
        fastest = min(one_thread, key=lambda r: p50(r, "model"))
        pre, post, model = p50(fastest, "preprocess"), p50(fastest, "postprocess"), p50(fastest, "model")
        ratio = (pre + post) / model
        implementation = main_doc["run"].get("preprocess_implementation", "not recorded")
        post_implementation = main_doc["run"].get("postprocess_implementation", "not recorded")
        out += [
            f"**End-to-end overhead**, {MODEL}, 1 thread, fastest backend by model-only p50 "
            f"({fastest['backend']}, fp32): pre-processing {pre:.2f} ms + decode/NMS {post:.2f} ms = "
            f"{pre + post:.2f} ms on a {model:.2f} ms model: **{100 * ratio:.1f}%** "
            f"(target {100 * OVERHEAD_TARGET:.0f}%: {verdict(ratio <= OVERHEAD_TARGET)}; stretch "
            f"{100 * OVERHEAD_STRETCH:.0f}%: {verdict(ratio <= OVERHEAD_STRETCH)}). Pre-processing ran as "
            f"`{implementation}`, decode/NMS as `{post_implementation}`. Per backend at 1 thread:",
            "",
            "| backend | model p50 ms | pre ms | post ms | overhead |",
            "|---|---:|---:|---:|---:|",
        ]
        worst = 0.0
        for r in sorted(one_thread, key=lambda r: p50(r, "model")):
            o = (p50(r, "preprocess") + p50(r, "postprocess")) / p50(r, "model")
            worst = max(worst, o)
            out.append(f"| {r['backend']} | {p50(r, 'model'):.2f} | {p50(r, 'preprocess'):.2f} | "
                       f"{p50(r, 'postprocess'):.2f} | {100 * o:.1f}% |")
        out += ["", f"Every backend at 1 thread: at most **{100 * worst:.1f}%** (stretch "
                    f"{100 * OVERHEAD_STRETCH:.0f}% on every backend: {verdict(worst <= OVERHEAD_STRETCH)}).", ""]

    out += [
        f"**Speed-up over PyTorch eager** ({MODEL}, model-only p50, same threads and precision; the "
        "end-to-end ratio beside it):",
        "",
        "| precision | threads | fastest engine | PyTorch eager | speed-up | end-to-end | target 2.5x |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    for doc in docs:
        precisions = sorted({r.get("precision") for r in doc["results"]})
        for precision in precisions:
            out += speedup_lines(doc, precision)
    out.append("")
    out += accuracy_lines(paths[0])
    out += train_step_lines(train_rows)
    return print("\n".join(out)) or 0


def accuracy_lines(report_path: str) -> list[str]:
    """The accuracy_*.json files ``nanoplus eval --json`` wrote beside the report (bf16 vs fp32)."""
    import glob
    import os

    found = sorted(glob.glob(os.path.join(os.path.dirname(report_path), "accuracy_*.json")))
    if not found:
        return []
    lines = ["**What the precision costs in accuracy** (`nanoplus eval --precision P` on "
             "tiny_coco val2017, 50 images; a speed-up in bf16 is a speed-up of a less accurate model):", "",
             "| model file | backend | precision | mAP | AP50 |", "|---|---|---|---:|---:|"]
    for path in found:
        r = json.load(open(path, encoding="utf-8"))
        lines.append(f"| {os.path.basename(r['model'])} | {r['backend']} | {r['precision']} | {r['mAP']:.4f} | {r['AP50']:.4f} |")
    return lines + [""]


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1:]))
