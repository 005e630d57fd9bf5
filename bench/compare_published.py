"""Our OpenVINO / ncnn latencies next to the published NanoDet-Plus table (SPEC §4), as Markdown.

    python3 bench/compare_published.py bench/results/report.json >> bench/REPORT.md

The published numbers are upstream NanoDet's README table (model-only latency): ncnn on a Kirin 980
phone SoC, OpenVINO on an Intel i7-8700 desktop CPU. Upstream states neither the thread count nor the
statistic; the i7-8700 has no bf16, so its OpenVINO numbers are fp32, and ncnn on the Kirin 980
(ARMv8.2) uses fp16 arithmetic by default. Different CPUs: the comparison places our numbers, it
does not rank implementations.
"""
from __future__ import annotations

import json
import sys

# model name -> input size -> (Kirin 980 ncnn ms, i7-8700 OpenVINO ms), from SPEC §4
PUBLISHED = {
    "nanodet-plus-m": {320: (11.97, 5.25), 416: (19.77, 8.32)},
    "nanodet-plus-m-1.5x": {320: (15.90, 7.21), 416: (25.49, 11.50)},
}


def family(model_name: str) -> str:
    """nanodet-plus-m_416 -> nanodet-plus-m (the size is read from input_hw)."""
    return model_name.rsplit("_", 1)[0] if "_" in model_name else model_name


def main(path: str) -> int:
    doc = json.load(open(path, encoding="utf-8"))
    cpu = doc["machine"]["cpu"]
    lines = [
        "",
        "## Against the published numbers (SPEC §4)",
        "",
        f"Ours: {cpu.get('model')} ({cpu.get('architecture')}, {cpu.get('usable_cores') or cpu.get('logical_cores')} "
        f"usable cores{', virtual machine' if cpu.get('virtualized') else ''}), model-only p50, precision as listed. "
        "Published: upstream NanoDet README, model-only, thread count not stated; ncnn on a Kirin 980 "
        "(phone; ncnn's defaults compute in fp16 there), OpenVINO on an Intel i7-8700 (desktop, 6 cores, fp32). Different CPUs: "
        "this places our numbers, it does not rank the implementations.",
        "",
        "| model | size | backend | precision | threads | ours p50 ms | published ms | published on |",
        "|---|---:|---|---|---:|---:|---:|---|",
    ]
    rows = 0
    for r in doc["results"]:
        backend = r.get("backend")
        size = (r.get("input_hw") or [None])[0]
        table = PUBLISHED.get(family(r["model"]["name"]), {})
        if backend not in ("ncnn", "openvino") or size not in table or r.get("input_hw", [0, 0])[1] != size:
            continue
        published = table[size][0 if backend == "ncnn" else 1]
        where = "Kirin 980" if backend == "ncnn" else "i7-8700"
        lines.append(f"| {r['model']['name']} | {size} | {backend} | {r.get('precision')} | {r.get('threads') or 'default'} "
                     f"| {r['stages']['model']['p50_ms']:.2f} | {published:.2f} | {where} |")
        rows += 1
    if not rows:
        lines.append("| (no OpenVINO or ncnn result of a published model in this file) | | | | | | | |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
