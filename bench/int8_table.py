"""Every format x precision of one checkpoint: size, mAP, model p50 at 1 and 2 threads, e2e fps.

One command makes the table and the mAP-vs-latency plot with its Pareto front:

    python bench/int8_table.py m416.ckpt --data ../shared/assets/datasets/tiny_coco --out bench/results/int8

It runs ``nanoplus export CKPT --format all --half --int8 --calib DATA --check DATA`` (the files, the
PyTorch and per-file mAP on DATA's val split), then ``nanoplus bench`` on every file at the given
thread counts (interleaved rounds, f32 compute pinned for OpenVINO, ncnn as the runtime opens it),
and writes OUT/int8_table.md, OUT/int8_pareto.png and OUT/int8_table.json (export + bench records).
A row is on the Pareto front when no other file is both faster (model p50, first thread count)
and at least as accurate (``nanoplus.runtime.bench_pick.pareto_front``, the same front as
``nanoplus bench FILES --data DATA``, which does the bench + mAP part of this on any files).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from nanoplus.runtime.bench_pick import pareto_front
from nanoplus.runtime.bench_report import plot_pareto

REPO = Path(__file__).resolve().parents[1]


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True, help="dataset: calibration (train split) and mAP (val split)")
    parser.add_argument("--out", required=True, help="output folder (the files and the report)")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--image", default=str(REPO.parent / "shared" / "assets" / "images" / "dog.jpg"))
    parser.add_argument("--skip-export", action="store_true", help="reuse OUT/export.json and its files")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "nanoplus.cli"]
    export_json, bench_json = out / "export.json", out / "bench.json"
    if not args.skip_export:
        run(cli + ["export", args.checkpoint, "--format", "all", "--half", "--int8", "--calib", args.data,
                   "--check", args.data, "--out-dir", str(out), "--threads", "1", "--json", str(export_json)])
    export = json.loads(export_json.read_text())
    files = [row for row in export["files"] if row.get("parity") != "FAIL"]
    run(cli + ["bench", *[row["file"] for row in files], "--threads", args.threads, "--runs", str(args.runs),
               "--image", args.image, "--json", str(bench_json), "--quiet"])
    bench = json.loads(bench_json.read_text())
    threads = [int(t) for t in args.threads.split(",")]

    rows = []
    for row in files:
        name = Path(row["file"]).name
        results = [r for r in bench["results"] if Path(r["model"].get("path", "")).name == name]
        cells = {r["threads"]: r for r in results}
        p50 = [cells[t]["stages"]["model"]["p50_ms"] if t in cells else float("nan") for t in threads]
        e2e = cells.get(threads[0], {}).get("stages", {}).get("end_to_end", {}).get("p50_ms")
        rows.append({"file": name, "format": row["format"], "precision": row["precision"],
                     "size_mb": row["size_bytes"] / 1e6, "mAP": row.get("mAP"), "AP50": row.get("AP50"),
                     "model_p50_ms": dict(zip(threads, p50)), "e2e_fps": 1000.0 / e2e if e2e else None})
    front = pareto_front([(r["model_p50_ms"][threads[0]], r["mAP"]) for r in rows])
    for r, on in zip(rows, front):
        r["pareto"] = on
    torch_map = export["pytorch"]["mAP"] if export.get("pytorch") else None

    head = ["file", "format", "precision", "size MB", "mAP", "AP50"] + [f"model p50 {t}T ms" for t in threads] + \
        [f"e2e fps {threads[0]}T", "Pareto"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(rows, key=lambda r: (r["format"], r["precision"])):
        lines.append("| " + " | ".join([r["file"], r["format"], r["precision"], f"{r['size_mb']:.2f}",
                                        f"{r['mAP']:.4f}", f"{r['AP50']:.4f}",
                                        *[f"{r['model_p50_ms'][t]:.1f}" for t in threads],
                                        f"{r['e2e_fps']:.1f}" if r["e2e_fps"] else "-",
                                        "yes" if r["pareto"] else ""]) + " |")
    machine = bench.get("machine", {})
    text = [f"# Every format x precision of {Path(args.checkpoint).name}", "",
            f"Made by `python bench/int8_table.py {args.checkpoint} --data {args.data} --out {args.out} "
            f"--threads {args.threads} --runs {args.runs}`; mAP on {args.data} val"
            + (f" (PyTorch: {torch_map:.4f})" if torch_map is not None else "") + "; "
            f"machine: {machine.get('cpu', {}).get('model', machine.get('cpu', '?')) if isinstance(machine.get('cpu'), dict) else machine.get('cpu', '?')}.",
            "", *lines, ""]
    (out / "int8_table.md").write_text("\n".join(text), encoding="utf-8")
    (out / "int8_table.json").write_text(json.dumps({"rows": rows, "threads": threads, "pytorch_mAP": torch_map},
                                                    indent=1), encoding="utf-8")
    _plot(rows, threads[0], out / "int8_pareto.png")
    print("\n".join(text))
    return 0


def _plot(rows, threads, path: Path) -> None:
    points = [(f"{r['format']} {r['precision']}", r["model_p50_ms"][threads], r["mAP"], r["pareto"]) for r in rows]
    plot_pareto(points, str(path), xlabel=f"model p50 latency, {threads} thread(s) (ms)")


if __name__ == "__main__":
    sys.exit(main())
