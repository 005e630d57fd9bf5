"""Measure latency per model, backend, thread count and input size: model-only and end to end.

Every combination is measured in one run, interleaved round-robin (A B A B ...), so that the
ratios between them hold on a noisy machine. Per combination: the first-run latency and the
warm-up mean; model-only latency (the engine on a ready blob); end-to-end latency from a decoded
BGR image to final boxes, split into pre-processing, inference and decode + NMS; min / p50 / p90 /
p99 / mean / std and throughput; the overhead ratio (pre + post) / model-only; the speed-up over a
baseline backend (torch by default). The machine, the software versions, the thread settings and
each model file's SHA-256 are recorded with the numbers (--json, schema in docs/bench.md).

examples:
  nanoplus bench model.onnx model.xml model.param --threads 1,2
  nanoplus bench model.onnx --backend onnxruntime,openvino --runs 300 --json here.json
  nanoplus bench best.ckpt model.onnx --baseline torch --image photo.jpg --markdown report.md
  nanoplus bench model.param --sustained 600 --window 30     # drift and CPU temperature over 10 min
  nanoplus bench --merge x86.json pi5.json phone.json --markdown devices.md
  nanoplus bench fp32/m.xml int8/m.xml m.param --data coco/ --threads 1,4 --plot lat.png   # pick the file

With --data, each file (per backend) is also evaluated once on the dataset through `nanoplus eval`'s
path and thresholds: the table gains the size in MB, mAP, AP50 and the mAP-vs-latency Pareto front,
and a line names the fastest file within --max-map-loss of the best mAP.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Optional

from nanoplus.atomic import write_text_atomic
from nanoplus.errors import NanoplusError
from nanoplus.runtime import bench
from nanoplus.runtime.bench import BenchError
from nanoplus.runtime.bench_accuracy import evaluate_cases, load_eval_data
from nanoplus.runtime.bench_machine import machine_info
from nanoplus.runtime.bench_pick import DEFAULT_MAX_MAP_LOSS
from nanoplus.runtime.bench_report import (pareto_plot_path, pareto_points, plot_distributions, plot_pareto,
                                           render_markdown, render_text)
from nanoplus.runtime.bench_results import build_document, file_sha256, load_document


def add_arguments(parser) -> None:
    parser.add_argument("models", nargs="*", metavar="MODEL",
                        help="model files: .onnx, .xml (OpenVINO IR), .param (ncnn), .ckpt/.pth (torch checkpoint), "
                             "or a folder holding one")
    parser.add_argument("--backend", default="auto",
                        help="comma-separated backends (auto, onnxruntime, openvino, ncnn, torch); each model runs "
                             "on every listed backend that reads its format (default: auto, one per model)")
    parser.add_argument("--threads", default="1",
                        help="comma-separated thread counts, e.g. 1,2,4; 'default' leaves the engine's own (default: 1)")
    parser.add_argument("--input-size", default=None, metavar="SIZES",
                        help="comma-separated input sizes (416 or HEIGHTxWIDTH); default: each model's own size. "
                             "Sizes other than a model's own need a model that accepts them (ncnn, dynamic ONNX / OpenVINO)")
    parser.add_argument("--imgsz", default=None, help=argparse.SUPPRESS)  # the old spelling of --input-size
    parser.add_argument("--precision", choices=("f32", "native", "bf16"), default="f32",
                        help="f32 (default): every engine computes in float32 (OpenVINO would pick bf16 on CPUs that "
                             "have it); native: each engine's own default, recorded per result; bf16: OpenVINO and "
                             "torch (autocast) in bfloat16, for a like-for-like bf16 comparison")
    parser.add_argument("--warmup", type=int, default=10, help="warm-up iterations per combination (default 10, at least 1)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--runs", type=int, default=None, help="measured rounds per combination (default 100)")
    length.add_argument("--seconds", type=float, default=None, help="measure for this many seconds instead of --runs")
    length.add_argument("--sustained", type=float, default=None, metavar="SECONDS",
                        help="sustained run of this many seconds, reporting drift per time window and the CPU temperature")
    parser.add_argument("--window", type=float, default=None, metavar="SECONDS",
                        help="window length for --sustained (default: a tenth of the run, at least 1 s)")
    parser.add_argument("--settle", type=float, default=0.0, metavar="MS",
                        help="pause before each case's turn (not timed) so the previous engine's spinning worker "
                             "threads go idle first; try 20 when multi-threaded engines are interleaved on few cores "
                             "(default 0)")
    parser.add_argument("--image", default=None,
                        help="image file the end-to-end timings start from (default: a synthetic 640x480 image; a real photo "
                             "gives realistic decode + NMS cost)")
    parser.add_argument("--score-thr", type=float, default=0.35, help="score threshold of the post-processing (default 0.35)")
    parser.add_argument("--iou-thr", type=float, default=0.6, help="NMS IoU threshold (default 0.6)")
    parser.add_argument("--max-det", type=int, default=100, help="maximum detections kept (default 100)")
    parser.add_argument("--baseline", default="torch",
                        help="backend the speed-up column compares against, same model, size and threads (default torch)")
    parser.add_argument("--label", default=None, help="name of this machine in tables (default: board or CPU model)")
    parser.add_argument("--json", default=None, metavar="FILE", help="write the results document (schema: docs/bench.md)")
    parser.add_argument("--markdown", default=None, metavar="FILE", help="write the report as Markdown")
    parser.add_argument("--plot", default=None, metavar="FILE.png", help="plot the latency distributions (needs matplotlib)")
    parser.add_argument("--no-samples", action="store_true", help="leave the raw per-iteration samples out of --json")
    parser.add_argument("--merge", nargs="+", default=[], metavar="FILE",
                        help="results files (from this command or any program writing the schema) shown in one table "
                             "with this run's results, if any")
    parser.add_argument("--data", default=None, metavar="DATA",
                        help="also evaluate each file on this dataset (COCO folder or json, YOLO data YAML, VOC "
                             "folder) at nanoplus eval's thresholds: mAP, AP50, Pareto front, fastest within a loss")
    parser.add_argument("--split", default="val", help="split of --data to evaluate (default: val)")
    parser.add_argument("--eval-images", type=int, default=None, metavar="N",
                        help="evaluate on the first N images of the split only (default: all)")
    parser.add_argument("--max-map-loss", type=float, default=DEFAULT_MAX_MAP_LOSS, metavar="LOSS",
                        help="with --data: name the fastest file whose mAP is at most LOSS below the best "
                             f"(default {DEFAULT_MAX_MAP_LOSS})")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    if not args.models and not args.merge:
        raise BenchError("nothing to do: give model files to measure, or --merge FILE ... to show saved results")
    if args.data is not None and not args.models:
        raise BenchError("--data evaluates the model files given to measure; with only --merge there are none")
    documents = [(str(p), load_document(p)) for p in args.merge]
    if args.models:
        documents.insert(0, ("this run", measure_models(args)))
        if args.json:
            write_text_atomic(args.json, json.dumps(documents[0][1], indent=1, allow_nan=False) + "\n")
    elif args.json:
        raise BenchError("--json writes this run's measurements; with only --merge there are none (use --markdown)")

    print(render_text([d for _, d in documents], args.baseline))
    if args.markdown:
        write_text_atomic(args.markdown, render_markdown([d for _, d in documents], args.baseline))
    front_plot = None
    if args.plot:
        plot_distributions([d for _, d in documents], args.plot)
        points = pareto_points([d for _, d in documents])
        if points:
            front_plot = pareto_plot_path(args.plot)
            plot_pareto(points, front_plot)
    for name, path in (("results", args.json), ("report", args.markdown), ("plot", args.plot),
                       ("mAP-vs-latency plot", front_plot)):
        if path:
            print(f"{name} written to {path}", file=sys.stderr)
    return 0


def parse_threads(text: str) -> list[Optional[int]]:
    values = []
    for part in str(text).split(","):
        part = part.strip().lower()
        if part in ("default", "auto", "0"):
            values.append(None)
        elif part.isdigit() and int(part) > 0:
            values.append(int(part))
        else:
            raise BenchError(f"--threads: '{part}' is not a thread count; write e.g. 1,2,4 or 'default'")
    return list(dict.fromkeys(values))


def input_size_option(args) -> Optional[str]:
    """--input-size, or the old spelling --imgsz with a note to move on."""
    if args.imgsz is None:
        return args.input_size
    if args.input_size is not None:
        raise BenchError("give --input-size only (--imgsz is its old spelling)")
    print("nanoplus bench: --imgsz is deprecated; write --input-size (same values)", file=sys.stderr)
    return args.imgsz


def parse_sizes(text: Optional[str]) -> list:
    """'416,320x416' -> [(416, 416), (320, 416)] (height, width); None -> [None] (each model's own)."""
    from nanoplus.runtime.detector import parse_input_size

    if not text:
        return [None]
    try:
        return [parse_input_size(part.strip()) for part in text.split(",")]
    except NanoplusError as e:
        raise BenchError(f"--input-size: {e}") from None


def plan_cases(models: list[str], backends: list[str], threads: list[Optional[int]], sizes: list) -> list:
    """Every (model, backend, threads, size) combination to measure, in a stable order.

    With ``auto`` each model runs on the backend the Detector picks for its format; with a list of
    backends, each model runs on every listed backend that reads its format.
    """
    from nanoplus.runtime.backends import BACKEND_NAMES, BACKEND_SUFFIXES, resolve_model_path

    unknown = [b for b in backends if b != "auto" and b not in BACKEND_NAMES]
    if unknown:
        raise BenchError(f"--backend: unknown backend(s) {unknown}; choose from auto, {', '.join(BACKEND_NAMES)}")
    cases, used = [], set()
    for model in dict.fromkeys(models):  # a file given twice is measured once
        path = Path(model)
        if path.is_dir():  # a folder holding one model file, as the Detector accepts
            path = resolve_model_path(path)
        if not path.is_file():
            hint = " (an OpenVINO IR is given by its .xml, an ncnn model by its .param)" if path.suffix == ".bin" else ""
            raise BenchError(f"{model}: no such model file{hint}; check the path")
        if path.suffix.lower() == ".bin":  # weights: the graph file beside them is the model
            path = resolve_model_path(path)
        suffix = path.suffix.lower()
        chosen = [b for b in backends if b == "auto" or suffix in BACKEND_SUFFIXES[b]]
        if not chosen:
            readers = [b for b, suffixes in BACKEND_SUFFIXES.items() if suffix in suffixes] or ["none"]
            raise BenchError(f"{model}: none of --backend {','.join(backends)} reads {suffix} files "
                             f"(backends for this file type: {', '.join(readers)})")
        used.update(chosen)
        for backend in chosen:
            for size in sizes:
                for count in threads:
                    cases.append(bench.Case(model_path=str(path), backend=backend, threads=count, input_size=size))
    unused = [b for b in backends if b not in used]
    if unused:
        formats = "; ".join(f"{b} reads {'/'.join(BACKEND_SUFFIXES[b])}" for b in unused)
        raise BenchError(f"--backend {','.join(unused)}: none of the models given has a file type it reads ({formats})")
    return cases


def measure_models(args) -> dict:
    """Open every combination, measure them interleaved, return the results document."""
    if args.warmup < 1:
        raise BenchError("--warmup must be at least 1 (the first call is reported apart as the first-run latency)")
    backends = [b.strip().lower() for b in args.backend.split(",") if b.strip()] or ["auto"]
    threads = parse_threads(args.threads)
    sizes = parse_sizes(input_size_option(args))
    cases = plan_cases(args.models, backends, threads, sizes)
    image, image_info = load_image(args.image)
    if args.max_map_loss < 0:
        raise BenchError(f"--max-map-loss must be 0 or more, got {args.max_map_loss}")
    dataset = None
    if args.data is not None:  # read before the long measurement, so that a bad path fails at once
        dataset = load_eval_data(args.data, args.split, args.eval_images)
    elif args.eval_images is not None:
        raise BenchError("--eval-images applies to --data only")

    seconds = args.sustained if args.sustained is not None else args.seconds
    runs = None if seconds is not None else (args.runs if args.runs is not None else 100)
    window = None
    if args.sustained is not None:
        window = args.window if args.window is not None else max(1.0, args.sustained / 10)
    elif args.window is not None:
        raise BenchError("--window applies to --sustained runs only")

    for case in cases:
        bench.open_case(case, precision=args.precision, score_thr=args.score_thr, iou_thr=args.iou_thr,
                        max_det=args.max_det)
    machine = machine_info(args.label)
    if args.settle < 0:
        raise BenchError(f"--settle must be 0 or more milliseconds, got {args.settle}")
    record = bench.measure(cases, image, warmup=args.warmup, runs=runs, seconds=seconds, window_s=window,
                           progress=not args.quiet, settle_s=args.settle / 1000.0)
    settings = {
        "warmup": args.warmup, "runs": runs, "seconds": args.seconds, "sustained_s": args.sustained,
        "settle_ms": args.settle,
        "precision_policy": args.precision,
        "preprocess_implementation": bench.preprocess_implementation(),
        "postprocess_implementation": bench.postprocess_implementation(),
        "postprocess": {"score_thr": args.score_thr, "iou_thr": args.iou_thr, "max_det": args.max_det},
        "image": image_info,
    }
    accuracy = evaluate_cases(cases, dataset, progress=not args.quiet) if dataset is not None else None
    command = "nanoplus bench " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if sys.argv[1:2] == ["bench"] else None
    document = build_document(cases, record, machine, settings, command=command, keep_samples=not args.no_samples,
                              accuracy=accuracy, max_map_loss=args.max_map_loss)
    return document


def load_image(path: Optional[str]):
    """The BGR image the end-to-end timings start from, and its description for the results."""
    import numpy as np

    from nanoplus.runtime.images import read_image

    if path is None:
        image = synthetic_image()
        return image, {"source": "synthetic", "height": image.shape[0], "width": image.shape[1]}
    if not Path(path).is_file():
        raise BenchError(f"--image {path}: no such file")
    image = read_image(path)
    return np.ascontiguousarray(image), {"source": str(path), "sha256": file_sha256(path),
                                         "height": image.shape[0], "width": image.shape[1]}


def synthetic_image(height: int = 480, width: int = 640):
    """A fixed (h, w, 3) uint8 BGR scene: gradients, blobs and noise (same on every machine)."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(20240601)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([xs / width * 200, ys / height * 200, (xs + ys) / (width + height) * 255], axis=-1)
    for _ in range(12):
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(20, 120)), int(rng.integers(20, 120)))
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.ellipse(image, center, axes, float(rng.integers(0, 180)), 0, 360, color, -1)
    image += rng.normal(0, 8, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)
